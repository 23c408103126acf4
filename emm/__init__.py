"""EnergyMonitoringManagement: the core shared by the scheduler, worker, writer and simulator."""

__version__ = "0.1.0"
