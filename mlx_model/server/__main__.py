from mlx_model.server.cli import main

main()
