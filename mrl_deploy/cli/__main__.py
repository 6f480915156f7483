"""`python -m mrl_deploy.cli`: the same as the `mrl-deploy` command."""

from . import main

main()
