"""`python -m routevpn`."""

from routevpn.cli import main

raise SystemExit(main())
