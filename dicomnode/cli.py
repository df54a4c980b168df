"""`python -m dicomnode.cli`, the public command; the command line lives in `dicomnode.app.cli`."""
from dicomnode.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
