from parley_cli.entry import run

run()
