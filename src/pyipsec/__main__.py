from pyipsec.cli.main import main

main()
