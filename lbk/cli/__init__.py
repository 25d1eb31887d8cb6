"""The command line: click commands that turn options into one call into lbk.ops."""
