"""Question answering with exact citations: AnswerEngine.ask(question, k, filters) -> Answer."""
