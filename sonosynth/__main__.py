from sonosynth.cli import main

main()
