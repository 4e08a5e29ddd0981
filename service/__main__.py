from spendgate.cli import main

raise SystemExit(main())
