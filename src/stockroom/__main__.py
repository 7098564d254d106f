from stockroom.cli import main

main()
