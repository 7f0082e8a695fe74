from landscape.cli import app

app(prog_name="landscape")
