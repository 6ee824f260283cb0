"""The application side: Application, its link to the master, handles and the callback style."""
