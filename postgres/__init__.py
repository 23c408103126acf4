"""PostgreSQL, the only package that imports psycopg2: the schema, the shipped profiles' import
and the queries.

Used by `emm migrate` (schema and shipped profiles), `emm profiles` (list, show, import),
`emm read` (a type's registers), the scheduler (the configuration on every tick) and the
simulator's `--write-config` (schema, profile and its meters' rows). The worker and the writer
never reach PostgreSQL.

The tables keep the original project's names and columns (`energy_meters`, `registers`) so an
existing database upgrades in place; what we add is an id per row, byte/word order, scaling,
"not available" values and per-type read limits (`meter_types`).
"""
