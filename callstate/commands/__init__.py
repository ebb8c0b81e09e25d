"""One module per `engine` subcommand; each has HELP, configure(parser) and run(args) -> exit code."""
