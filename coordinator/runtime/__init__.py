"""Runtime: the driver loop, configuration and the `concord` CLI."""
