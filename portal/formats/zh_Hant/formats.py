"""Traditional Chinese number format as used in Taiwan and Hong Kong: 1,234,567.89 (groups of 3).

Django's own zh_Hant module has no thousands separator; money and token counts read badly without.
"""

from django.conf.locale.zh_Hant.formats import *  # noqa: F403

THOUSAND_SEPARATOR = ","
NUMBER_GROUPING = 3
