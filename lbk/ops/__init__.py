"""Operations: plain arguments in, results or events out. Never import click or rich."""
