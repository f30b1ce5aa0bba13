from advseg.cli.main import main

main()
