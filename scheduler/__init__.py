"""The scheduler: on every cron tick, one job per meter to `emm.jobs`."""
