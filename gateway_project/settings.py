"""Settings: every deploy-time value comes from the environment.

With no environment but a database the project runs on a laptop: PostgreSQL (`make run` starts
one of its own, scripts/demo.py), in-memory channel layer, local-memory cache, eager Celery and the
built-in simulated provider.
"""

import binascii
import ipaddress
import warnings
from decimal import Decimal
from pathlib import Path

import environ
from celery.schedules import crontab
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# --- Secrets and DEBUG (docs/OPERATIONS.md) ---------------------------------------------------------
# DEBUG is off unless asked for: `make run` and the test suite (pytest.ini) turn it on, so a
# forgotten variable in production never means a public SECRET_KEY or a derived encryption key.
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="")
GATEWAY_ENCRYPTION_KEY = env("GATEWAY_ENCRYPTION_KEY", default="")

if not DEBUG:
    missing = [n for n, v in (("SECRET_KEY", SECRET_KEY), ("GATEWAY_ENCRYPTION_KEY", GATEWAY_ENCRYPTION_KEY)) if not v]
    if missing:
        raise ImproperlyConfigured(
            f"DEBUG=False (the default) needs {', '.join(missing)} in the environment; "
            "set DEBUG=true for a laptop (docs/OPERATIONS.md lists the production environment)"
        )
if GATEWAY_ENCRYPTION_KEY:
    try:
        Fernet(GATEWAY_ENCRYPTION_KEY)
    except (ValueError, binascii.Error, TypeError):
        raise ImproperlyConfigured(
            "GATEWAY_ENCRYPTION_KEY is not a Fernet key (32 url-safe base64-encoded bytes); make one with "
            '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`'
        ) from None
if not SECRET_KEY:
    SECRET_KEY = "insecure-dev-only-key-do-not-use-in-production"  # noqa: S105 (DEBUG only)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver", "[::1]"])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "allocations",
    "quota",
    "proxy",
    "realtime",
    "notifications",
    "portal",
    "ops",
    "backoffice",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "allocations.audit.audit_context_middleware",
    "portal.middleware.SessionLifetimeMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "gateway_project.urls"
AUTH_USER_MODEL = "allocations.Member"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/portal/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.portal",
            ],
        },
    },
]

ASGI_APPLICATION = "gateway_project.asgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/gateway")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", default="")  # parallel tests: one database per worker (tests/xdist_redis.py)
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = "UTC"
# Periodic jobs (quota/tasks.py, docs/POOL.md). The pool tick runs every minute and acts only in the
# first hour of a billing period (GATEWAY_BILLING_TIMEZONE), once per period.
CELERY_BEAT_SCHEDULE = {
    "pool-rebalance-tick": {"task": "quota.pool_rebalance_tick", "schedule": 60.0},
    "anomalies-detect": {"task": "quota.anomalies_detect", "schedule": 300.0},
    "reservations-sweep": {"task": "quota.reservations_sweep", "schedule": 60.0},
    "settlements-replay": {"task": "quota.settlements_replay", "schedule": 30.0},
    "alerts-scan": {"task": "notifications.alerts_scan", "schedule": 60.0},
    "usage-reconcile-nightly": {"task": "quota.usage_reconcile_nightly", "schedule": crontab(hour=3, minute=17)},
    # Call-record months: this one and three ahead exist (daily, idempotent; the hourly rollups
    # past their window leave then), and the months past GATEWAY_RETENTION_MONTHS leave (daily;
    # nothing while it is unset). A closed month's records are counted against its rollups once,
    # before the prune, so that the prune does not count.
    "call-record-partitions": {"task": "quota.call_record_partitions", "schedule": crontab(hour=2, minute=41)},
    "call-record-months-check": {"task": "quota.call_record_months_check", "schedule": crontab(hour=3, minute=17)},
    "call-records-prune": {"task": "quota.call_records_prune", "schedule": crontab(hour=3, minute=53)},
}

# Sign-in (SPEC section 7): single sign-on through any OpenID Connect provider when an issuer is
# set; password sign-in for everyone (`all`), staff only (`staff`) or nobody (`off`).
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend", "portal.sso.GatewayOIDCBackend"]
GATEWAY_OIDC_ISSUER = env("GATEWAY_OIDC_ISSUER", default="")
GATEWAY_OIDC_CLIENT_ID = env("GATEWAY_OIDC_CLIENT_ID", default="")
GATEWAY_OIDC_CLIENT_SECRET = env("GATEWAY_OIDC_CLIENT_SECRET", default="")
GATEWAY_OIDC_ALLOWED_DOMAINS = env.list("GATEWAY_OIDC_ALLOWED_DOMAINS", default=[])
GATEWAY_OIDC_LABEL = env("GATEWAY_OIDC_LABEL", default="Sign in with your organisation")
GATEWAY_OIDC_STAFF_GROUPS = env.list("GATEWAY_OIDC_STAFF_GROUPS", default=[])
GATEWAY_PASSWORD_LOGIN = env("GATEWAY_PASSWORD_LOGIN", default="all")
if GATEWAY_PASSWORD_LOGIN not in ("all", "staff", "off"):
    raise ImproperlyConfigured("GATEWAY_PASSWORD_LOGIN must be all, staff or off")
# Portal and admin sessions end after this long without a request, and this long after sign-in.
SESSION_COOKIE_AGE = int(env.float("GATEWAY_SESSION_IDLE_H", default=2) * 3600)
SESSION_SAVE_EVERY_REQUEST = True
GATEWAY_SESSION_MAX_AGE_H = env.float("GATEWAY_SESSION_MAX_AGE_H", default=24)

# Argon2id first: a password checked against an older hash (PBKDF2, ...) is re-hashed at sign-in.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
# The password policy (SPEC 10), for invitations, password changes, resets and the admin API.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hant", "繁體中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
FORMAT_MODULE_PATH = ["portal.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files: served by the app itself (WhiteNoise), hashed and compressed by collectstatic ---
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")
# Hashed names need the manifest that `collectstatic` writes: a deploy step (docs/OPERATIONS.md) and
# an image build step. DEBUG (make run, tests) serves the source files unhashed, no collectstatic.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_MAX_AGE = 31536000 if not DEBUG else 0  # hashed names never change content: cache a year
if DEBUG:
    # Without collectstatic (make run, tests) WhiteNoise finds the source files; its warning that
    # STATIC_ROOT does not exist says nothing there.
    warnings.filterwarnings("ignore", message="No directory at")

# --- Behind a TLS-terminating proxy (SPEC section 1, docs/OPERATIONS.md) ----------------------------
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
GATEWAY_BEHIND_TLS_PROXY = env.bool("GATEWAY_BEHIND_TLS_PROXY", default=False)
if GATEWAY_BEHIND_TLS_PROXY:
    # Only safe when the proxy always sets (or strips) X-Forwarded-Proto itself.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=GATEWAY_BEHIND_TLS_PROXY)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=GATEWAY_BEHIND_TLS_PROXY)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if GATEWAY_BEHIND_TLS_PROXY else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=GATEWAY_BEHIND_TLS_PROXY)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Health and metrics never pass through this redirect: gateway_project.asgi routes them past Django.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SILENCED_SYSTEM_CHECKS = env.list("SILENCED_SYSTEM_CHECKS", default=[])
# Behind PgBouncer in transaction mode a server-side cursor cannot outlive its transaction.
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env.bool("DB_DISABLE_SERVER_SIDE_CURSORS", default=False)
# PgBouncer in transaction mode before 1.21 (or without max_prepared_statements): no server-side
# prepared statements (psycopg's automatic ones, and the ledger's explicit ones) and no server-side
# cursors. docs/OPERATIONS.md.
GATEWAY_PGBOUNCER = env.bool("GATEWAY_PGBOUNCER", default=False)
if GATEWAY_PGBOUNCER:
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = None
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True

DATA_UPLOAD_MAX_NUMBER_FIELDS = 10000

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "allocations.api_auth.AdminTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "lib.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "lib.api_schema.GatewayAutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AI gateway admin and member API",
    "DESCRIPTION": "`/api/admin/` (staff: session with CSRF or an admin bearer token) and `/api/me/` (a member's "
    "session with CSRF). Errors use the gateway's envelope `{error: {code, message, type, param, request_id, "
    "fields?}}`. The OpenAI-compatible `/v1` surface is not described here.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["backoffice.api.base.IsStaff"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/",
}
# One-time secrets (new keys and tokens) shown in admin messages stay server-side, never in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# Gateway knobs (SPEC section 1).
GATEWAY_BILLING_TIMEZONE = env("GATEWAY_BILLING_TIMEZONE", default="UTC")
GATEWAY_NEAR_CAP_RATIO = Decimal(env("GATEWAY_NEAR_CAP_RATIO", default="0.8"))
GATEWAY_MAX_BODY_MB = env.int("GATEWAY_MAX_BODY_MB", default=100)
GATEWAY_UPSTREAM_TIMEOUT_S = env.float("GATEWAY_UPSTREAM_TIMEOUT_S", default=600.0)
# Call records of the months more than this many before the current one are pruned by beat (whole
# monthly partitions, after their daily rollups exist; quota.retention). Unset: kept forever.
_retention = env("GATEWAY_RETENTION_MONTHS", default="")
if _retention and (not _retention.isdigit() or int(_retention) < 1):
    raise ImproperlyConfigured("GATEWAY_RETENTION_MONTHS must be a whole number of months, at least 1")
GATEWAY_RETENTION_MONTHS: int | None = int(_retention) if _retention else None
# Failover across a model's deployments (quota.routing): attempts after the first, and how long a
# deployment that failed is avoided by every process (an upstream Retry-After wins).
GATEWAY_FAILOVER_ATTEMPTS = env.int("GATEWAY_FAILOVER_ATTEMPTS", default=2)
GATEWAY_COOLDOWN_S = env.float("GATEWAY_COOLDOWN_S", default=30.0)
GATEWAY_TRUSTED_PROXY_COUNT = env.int("GATEWAY_TRUSTED_PROXY_COUNT", default=0)
# Peers (CIDR list) whose X-Forwarded-For is believed; from any other peer the header is ignored.
GATEWAY_TRUSTED_PROXIES = env.list("GATEWAY_TRUSTED_PROXIES", default=[])
for _cidr in GATEWAY_TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_cidr.strip(), strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"GATEWAY_TRUSTED_PROXIES: {_cidr!r} is not an address or a CIDR network (e.g. 10.0.0.0/8)"
        ) from None
# Output tokens assumed for a reservation when the request names no max_tokens.
GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS = env.int("GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS", default=1024)
# Pages assumed for an OCR reservation when the request does not list `pages` (docs/ENDPOINTS.md).
GATEWAY_OCR_ESTIMATE_PAGES = env.int("GATEWAY_OCR_ESTIMATE_PAGES", default=10)
# Settlements that neither PostgreSQL nor Redis took wait in a file here (quota.ledger.spool); it is
# created only when needed. Give it a writable volume in a container (docs/OPERATIONS.md).
GATEWAY_SPOOL_DIR = env.path("GATEWAY_SPOOL_DIR", default=BASE_DIR / "var")
GATEWAY_SPOOL_FILE = Path(GATEWAY_SPOOL_DIR) / "settle-spool.jsonl"
# Threads (each with one persistent DB connection) that run the /v1 accounting steps, per process.
GATEWAY_ACCOUNTING_THREADS = env.int("GATEWAY_ACCOUNTING_THREADS", default=4)
# On SIGTERM, how long in-flight calls may run to their end before they are cancelled (docs/DECISIONS.md).
GATEWAY_SHUTDOWN_GRACE_S = env.float("GATEWAY_SHUTDOWN_GRACE_S", default=30.0)
# Rate limits (quota.ratelimit): their Redis (default: REDIS_URL; empty = per process, in memory),
# the window that rpm/tpm count over, and how often "Redis is unreachable, limits fail open" is logged.
GATEWAY_RATE_LIMIT_REDIS_URL = env("GATEWAY_RATE_LIMIT_REDIS_URL", default=REDIS_URL)
GATEWAY_RATE_LIMIT_WINDOW_S = env.float("GATEWAY_RATE_LIMIT_WINDOW_S", default=60.0)
GATEWAY_RATE_LIMIT_WARN_INTERVAL_S = env.float("GATEWAY_RATE_LIMIT_WARN_INTERVAL_S", default=60.0)
# Largest realtime frame relayed either way (a bigger one closes the socket with 1009).
GATEWAY_REALTIME_MAX_FRAME_BYTES = env.int("GATEWAY_REALTIME_MAX_FRAME_MB", default=16) * 1024 * 1024

# Mail (spend alerts, admin alerts): EMAIL_URL such as smtp://user:pass@host:587 or
# smtp+tls://…; without it mails are printed to the console (`make run`).
_email = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email.get("EMAIL_HOST", "localhost")
EMAIL_PORT = _email.get("EMAIL_PORT", 25)
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = _email.get("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = _email.get("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="gateway@localhost")
# Where links in mails point (the portal as members reach it).
GATEWAY_PUBLIC_URL = env("GATEWAY_PUBLIC_URL", default="http://127.0.0.1:8000")
# Admin alerts (quarantine, provider 401/403, upstream error bursts) go to these addresses.
GATEWAY_ALERT_EMAILS = env.list("GATEWAY_ALERT_EMAILS", default=[])
# Server errors of one provider within 5 minutes that make an alert; one mail per kind and provider
# per window of this many minutes.
GATEWAY_ALERT_UPSTREAM_ERRORS = env.int("GATEWAY_ALERT_UPSTREAM_ERRORS", default=10)
GATEWAY_ALERT_WINDOW_MIN = env.int("GATEWAY_ALERT_WINDOW_MIN", default=60)

# --- Operations: logs and metrics (docs/OPERATIONS.md) ---------------------------------------------
# One line per /v1 call and realtime session on the `gateway.calls` logger; `json` for a log
# shipper, `text` for a terminal.
GATEWAY_LOG_FORMAT = env("GATEWAY_LOG_FORMAT", default="text")
if GATEWAY_LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured("GATEWAY_LOG_FORMAT must be json or text")
# The per-call line is written whatever LOG_LEVEL is, unless GATEWAY_CALL_LOG=false.
GATEWAY_CALL_LOG = env.bool("GATEWAY_CALL_LOG", default=True)
# /metrics answers 404 while unset; with it, the bearer token Prometheus sends.
GATEWAY_METRICS_TOKEN = env("GATEWAY_METRICS_TOKEN", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "ops.logs.JsonFormatter"},
        "text": {"()": "ops.logs.TextFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": GATEWAY_LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"gateway.calls": {"level": "INFO" if GATEWAY_CALL_LOG else "WARNING"}},
}
# Third-party clients that print request headers at DEBUG (the websockets handshake carries the
# provider key, aiohttp/httpx/openai log request options): WARNING whatever LOG_LEVEL says.
HEADER_LOGGING_LIBRARIES = ("websockets", "aiohttp", "httpx", "httpcore", "urllib3", "openai", "hpack", "h2")
_loggers: dict = LOGGING.get("loggers") or {}  # type: ignore[assignment]
LOGGING["loggers"] = {**_loggers, **{name: {"level": "WARNING"} for name in HEADER_LOGGING_LIBRARIES}}
# Refused bearers (missing, malformed, unknown or revoked keys) one client address may send per
# minute on /v1 and /v1/realtime before it gets 429 until the minute ends (allocations.auth_failures).
GATEWAY_AUTH_FAILURES_PER_MINUTE = env.int("GATEWAY_AUTH_FAILURES_PER_MINUTE", default=30)
# A realtime socket opened without ?model= must name its model (first session.update) within this.
GATEWAY_REALTIME_FIRST_FRAME_S = env.float("GATEWAY_REALTIME_FIRST_FRAME_S", default=10.0)

# --- Production refusals and browser hardening (docs/OPERATIONS.md) --------------------------------
# With DEBUG off, a secret that is a placeholder (.env.example's `change-me`) or shorter than 32
# characters stops the start; the value itself is never printed.
if not DEBUG:
    _weak = [
        name
        for name, value in (("SECRET_KEY", SECRET_KEY), ("GATEWAY_METRICS_TOKEN", GATEWAY_METRICS_TOKEN))
        if (value or name == "SECRET_KEY")
        and (len(value) < 32 or any(p in value.casefold() for p in ("change-me", "change_me", "changeme")))
    ]
    if _weak:
        raise ImproperlyConfigured(
            f"{', '.join(_weak)}: a placeholder or shorter than 32 characters; make one with "
            '`python -c "import secrets; print(secrets.token_urlsafe(50))"`'
        )
# Every page Django renders (portal, admin, APIs) carries the Content-Security-Policy header.
MIDDLEWARE.insert(1, "portal.middleware.ContentSecurityPolicyMiddleware")
