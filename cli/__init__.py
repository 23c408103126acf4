"""The `emm` command line, above the services: it starts them, and holds the commands that need
PostgreSQL without being a service (`migrate`, `profiles`, `read`)."""
