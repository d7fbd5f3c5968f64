"""(c) The baseline: a trivial FastAPI app with one ``POST /api/v1/bookings`` route.

It validates the same body shape and answers ``202`` with the seed's body, doing nothing
else (no auth, no database, no Kafka). ``bench/run.py`` serves it with uvicorn in a
subprocess, exactly as the real API is served, and drives both with the same client::

    python -m uvicorn trivial_api:app --app-dir bench --port 8099
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel

app = FastAPI()


class BookingCreate(BaseModel):
    service_id: uuid.UUID
    slot_start: AwareDatetime
    payment_method: str
    notes: str | None = None


@app.post("/api/v1/bookings", status_code=202)
async def create_booking(body: BookingCreate) -> JSONResponse:
    booking_id = str(uuid.uuid4())
    poll = f"/api/v1/bookings/{booking_id}"
    return JSONResponse(
        status_code=202,
        content={
            "status": "accepted",
            "workflow_id": booking_id,
            "poll_url": poll,
            "estimated_completion": (datetime.now(UTC) + timedelta(seconds=60)).isoformat(),
        },
        headers={"Location": poll, "Retry-After": "1"},
    )
