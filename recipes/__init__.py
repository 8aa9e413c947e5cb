"""The shipped recipes, installed as ``fastvip.recipes`` so `fastvip recipes` and
`fastvip run recipes/NAME.py` work without a checkout. Recipe files are run as scripts
(``fastvip.recipe.load_recipe``), never imported."""
