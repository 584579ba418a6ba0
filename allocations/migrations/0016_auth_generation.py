from django.db import migrations

# The auth generation (lib.cache): one row, moved by every change a proxied call's cached state
# depends on, in the transaction of that change. No model: nothing but lib.cache reads or writes
# it, and a flush of the test database leaves it (a number must never go back to one a process
# may still hold).
CREATE = "CREATE TABLE gw_auth_generation (id smallint PRIMARY KEY CHECK (id = 1), n bigint NOT NULL)"


class Migration(migrations.Migration):
    dependencies = [("allocations", "0015_catalogmodel_drop_unsupported_params")]

    operations = [
        migrations.RunSQL(CREATE, reverse_sql="DROP TABLE gw_auth_generation"),
    ]
