from openma.cli import main

main()
