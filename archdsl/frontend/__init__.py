"""Front end: .arch text -> lark parse tree -> AST (ast.py, parse.py) -> IR (elaborate.py)."""
