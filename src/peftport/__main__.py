from peftport.cli import main

main()
