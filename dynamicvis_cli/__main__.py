from dynamicvis_cli.cli.app import main

main()
