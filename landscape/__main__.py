from landscape.app.cli import main

main()
