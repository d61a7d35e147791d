from tunnelbroker.cli import main

main()
