from qasr_live.cli import main

raise SystemExit(main())
