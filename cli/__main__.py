from latentlm.cli.main import main

main()
