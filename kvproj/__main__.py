from kvproj.cli import main

raise SystemExit(main())
