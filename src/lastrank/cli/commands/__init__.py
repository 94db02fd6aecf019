"""What each subcommand does, one module per subcommand, named by its parser module one folder up
(`handler="lastrank.cli.commands.<name>:<function>"`) and imported only when that subcommand runs."""
