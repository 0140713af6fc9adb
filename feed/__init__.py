"""A social-feed backend: commands into PostgreSQL with an outbox, reads from Redis."""
