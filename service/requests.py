"""Request models shared by every front end above the service layer: the HTTP API, the CLI, the
OpenAI-compatible endpoint, the MCP server and the LangChain retriever validate facet filters with this
one model, so a filter means the same thing (and fails with the same message) wherever it is given; and
the one citation shape (``CitationOut``) that /ask, chat and MCP answer with."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qiao.retriever.filters import check_date_range, check_iso_date, resolve_region_names
from qiao.retriever.models import Filters

__all__ = ["CitationOut", "SearchFilters"]


class SearchFilters(BaseModel):
    """Facet filters. Every list is OR within itself; different filters are AND-ed."""

    model_config = ConfigDict(extra="forbid")

    lang: list[Literal["en", "zh"]] | None = Field(None, description='languages to keep: "en", "zh"')
    region: list[str] | None = Field(
        None, description="regions in English, Simplified or Traditional Chinese (e.g. Tianjin, 天津, 博鰲樂城)", max_length=50
    )
    date_from: str | None = Field(None, description="inclusive, YYYY-MM-DD")
    date_to: str | None = Field(None, description="inclusive, YYYY-MM-DD")
    doc_id: list[str] | None = Field(None, description="document ids (see GET /documents)", max_length=1000)

    @field_validator("date_from", "date_to")
    @classmethod
    def _dates(cls, v):
        return check_iso_date(v)

    @field_validator("region")
    @classmethod
    def _regions(cls, v):
        return resolve_region_names(v)

    @model_validator(mode="after")
    def _range(self):
        check_date_range(self.date_from, self.date_to)
        return self

    def to_filters(self) -> Filters:
        return Filters(
            lang=tuple(self.lang) if self.lang else None,
            region=tuple(self.region) if self.region else None,
            date_from=self.date_from,
            date_to=self.date_to,
            doc_id=tuple(self.doc_id) if self.doc_id else None,
        )


class CitationOut(BaseModel):
    id: int = Field(description="the n of the [n] marker in the answer")
    doc_id: str
    source: str
    title: str
    start: int = Field(description="character offset into the original document text")
    end: int = Field(description="exclusive; quote == original_text[start:end]")
    quote: str
    date: str | None
    regions: list[str]
