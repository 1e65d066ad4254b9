from parley_cli.main import main

main()
