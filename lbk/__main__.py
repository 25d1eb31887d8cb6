from lbk.cli.main import main

main()
