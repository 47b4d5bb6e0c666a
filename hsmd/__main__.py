"""`python -m hsmd` is the `hsmd` command."""

from hsmd.app import main

raise SystemExit(main())
