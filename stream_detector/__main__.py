from stream_detector.cli import main

raise SystemExit(main())
