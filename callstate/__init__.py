"""The composition root: the `engine` command line, wiring the core, the adapters and replay together."""
