"""Dev services: private, throw-away instances of what the pipeline talks to, for the tests,
the benchmarks and CI (`.ci/run`). Production code never imports this package.

- `net`: free ports, waiting for a port or an HTTP endpoint, polling a condition;
- `influx`: InfluxDB 1.x and VictoriaMetrics started from their binaries in a folder;
- `readers`: reading stored points back (InfluxQL over `/query`, VictoriaMetrics' export API);
- `postgres`: a fresh database on a server, or a private server to stop and start;
- `rabbitmq`: a private vhost on a broker, or a private node to kill and restart;
- `containers`: the same servers from a Docker engine, when one answers (testcontainers);
- `processes`: the project's `emm` commands as child processes with a log file each.

`python -m devservices DIR` starts InfluxDB 1.x and VictoriaMetrics and prints their URLs.
Standard library only, apart from the clients each service needs, imported when used.
"""
