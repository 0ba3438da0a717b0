"""Placeholder for commands whose issue has not landed yet."""

import click


def not_built(name: str, issue: str):
    @click.command(name, context_settings={"ignore_unknown_options": True},
                   help=f"(not built yet: {issue})")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args):
        click.echo(f"mlx-kssm {name}: not built yet ({issue}).", err=True)
        raise SystemExit(2)

    return cmd
