import typer
app = typer.Typer()
@app.command()
def hello():
    from adaudit.models.labels import TASKS
    print(TASKS["verdict"])
@app.command()
def other(): pass
