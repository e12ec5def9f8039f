"""``python -m jaxcache``."""

from jaxcache.launcher import main

if __name__ == "__main__":
    main()
