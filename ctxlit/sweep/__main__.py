import sys

from ctxlit.sweep import main

sys.exit(main())
