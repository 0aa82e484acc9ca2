from convforge.cli import main

main()
