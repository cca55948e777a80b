from nonstop.controller.main import main

main()
