# This example's tasks: the plugin's collection, added in three lines.
from invoke import Collection
import invoke_compimg

ns = Collection()
ns.add_collection(invoke_compimg.collection())  # ./Dockerfile, context "."
