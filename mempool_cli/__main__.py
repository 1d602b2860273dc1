from mempool_cli.cli import main

main()
