"""Infrastructure that knows no domain: the Redis client and the shared cache, the bounded
per-process caches, request helpers (client address, request id), the JSON APIs' parsers,
serializer fields, pagination, OpenAPI schema and error envelope, and the registry of this
process's in-flight work. Every app may import it; it imports no app (import-linter)."""
