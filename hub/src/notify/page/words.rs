//! Everything the tracking page says, in English and German: milestone names, timeline
//! entries, the van, the arrival window and the evidence of a delivery. The templates
//! hold the page's structure and none of its words.

use crate::model::Milestone;

/// The page's words in the customer's language (German for `de*` locales, else English).
#[derive(Debug, Clone, Copy)]
pub(super) struct Words {
    pub(super) de: bool,
}

impl Words {
    /// A milestone's name.
    pub(super) fn milestone(&self, m: Milestone) -> &'static str {
        match (m, self.de) {
            (Milestone::Created, false) => "Order received",
            (Milestone::Created, true) => "Bestellung erhalten",
            (Milestone::Dispatched, false) => "On its way",
            (Milestone::Dispatched, true) => "Unterwegs",
            (Milestone::OutForDelivery, false) => "Out for delivery",
            (Milestone::OutForDelivery, true) => "In Zustellung",
            (Milestone::Nearby, false) => "The driver is nearby",
            (Milestone::Nearby, true) => "Der Fahrer ist gleich da",
            (Milestone::Exception, false) => "Delivery problem",
            (Milestone::Exception, true) => "Zustellproblem",
            (Milestone::Delivered, false) => "Delivered",
            (Milestone::Delivered, true) => "Zugestellt",
        }
    }

    /// Customer words for a timeline kind; `None` hides internal kinds.
    pub(super) fn kind(&self, source: &str, kind: &str) -> Option<&'static str> {
        let de = self.de;
        Some(match (source, kind) {
            (_, "dispatched") => {
                if de {
                    "Versandt"
                } else {
                    "Dispatched"
                }
            }
            (_, "accepted") | (_, "label_created") => {
                if de {
                    "Beim Versender angemeldet"
                } else {
                    "Registered with the carrier"
                }
            }
            (_, "in_transit") => {
                if de {
                    "Unterwegs"
                } else {
                    "In transit"
                }
            }
            (_, "out_for_delivery") => {
                if de {
                    "In Zustellung"
                } else {
                    "Out for delivery"
                }
            }
            ("device", "nearby") => {
                if de {
                    "Der Fahrer war in der Nähe"
                } else {
                    "The driver was nearby"
                }
            }
            ("device", "delivered_at_address") => {
                if de {
                    "An der Adresse übergeben"
                } else {
                    "Handed over at the address"
                }
            }
            ("device", "driver_exception") | (_, "attempt_failed") => {
                if de {
                    "Zustellversuch fehlgeschlagen"
                } else {
                    "Delivery attempt failed"
                }
            }
            (_, "available_for_pickup") => {
                if de {
                    "Zur Abholung bereit"
                } else {
                    "Ready for pickup"
                }
            }
            (_, "exception") => {
                if de {
                    "Problem gemeldet"
                } else {
                    "Problem reported"
                }
            }
            (_, "returning") => {
                if de {
                    "Auf dem Rückweg zum Absender"
                } else {
                    "Returning to the sender"
                }
            }
            (_, "delivered") => {
                if de {
                    "Zustellung vom Versender gemeldet"
                } else {
                    "Carrier reports delivered"
                }
            }
            // What the customer did on this page, so they see it was taken.
            ("customer", "customer_instructions") => {
                if de {
                    "Ihre Hinweise für den Fahrer"
                } else {
                    "Your instructions for the driver"
                }
            }
            ("customer", "customer_not_home") => {
                if de {
                    "Sie haben gemeldet: heute nicht zu Hause"
                } else {
                    "You told us: not at home today"
                }
            }
            _ => return None,
        })
    }
}

/// The page's fixed labels, as the templates use them (`t.history`, ...).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(super) struct Labels {
    pub(super) tracking_number: &'static str,
    pub(super) order: &'static str,
    pub(super) progress: &'static str,
    pub(super) history: &'static str,
    pub(super) verified: &'static str,
    pub(super) photo_alt: &'static str,
    pub(super) photo_pending: &'static str,
    pub(super) map_alt: &'static str,
    pub(super) instructions: &'static str,
    pub(super) instructions_label: &'static str,
    pub(super) instructions_hint: &'static str,
    pub(super) instructions_send: &'static str,
    pub(super) not_home: &'static str,
    pub(super) not_home_hint: &'static str,
    pub(super) not_home_send: &'static str,
    pub(super) live_note: &'static str,
}

const EN: Labels = Labels {
    tracking_number: "Tracking number",
    order: "Order",
    progress: "Delivery progress",
    history: "History",
    verified: "Verified at your door",
    photo_alt: "Photo taken at handover",
    photo_pending: "The handover photo is still on its way.",
    map_alt: "Map of the streets around the van, with the van marked",
    instructions: "Delivery instructions for the driver",
    instructions_label: "Your instructions (up to 300 characters)",
    instructions_hint: "For example: the side door, or the neighbour at number 5. Please no door codes or passwords.",
    instructions_send: "Send to the driver",
    not_home: "Not at home today",
    not_home_hint: "Tell us before the van comes, so the driver knows.",
    not_home_send: "I am not at home today",
    live_note: "This page updates itself while your parcel is on the way.",
};

const DE: Labels = Labels {
    tracking_number: "Sendungsnummer",
    order: "Bestellung",
    progress: "Stand der Zustellung",
    history: "Verlauf",
    verified: "An Ihrer Tür bestätigt",
    photo_alt: "Foto bei der Übergabe",
    photo_pending: "Das Foto der Übergabe wird noch übertragen.",
    map_alt: "Karte der Straßen um den Lieferwagen, mit dem Lieferwagen markiert",
    instructions: "Hinweise für den Fahrer",
    instructions_label: "Ihre Hinweise (bis zu 300 Zeichen)",
    instructions_hint: "Zum Beispiel: der Seiteneingang, oder die Nachbarn in Nummer 5. Bitte keine Türcodes oder Passwörter.",
    instructions_send: "An den Fahrer senden",
    not_home: "Heute nicht zu Hause",
    not_home_hint: "Sagen Sie es uns, bevor der Lieferwagen kommt, damit der Fahrer Bescheid weiß.",
    not_home_send: "Ich bin heute nicht zu Hause",
    live_note: "Diese Seite aktualisiert sich selbst, solange Ihr Paket unterwegs ist.",
};

/// Where the van is on its way to the customer, in words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct VanWords {
    /// Metres from the address, when the hub has a recent position.
    pub(super) distance_m: Option<f64>,
    /// Age of that position, seconds.
    pub(super) age_s: Option<i64>,
}

impl Words {
    /// The fixed labels.
    pub(super) fn labels(&self) -> &'static Labels {
        if self.de { &DE } else { &EN }
    }

    /// The page's `lang`.
    pub(super) fn lang(&self) -> &'static str {
        if self.de { "de" } else { "en" }
    }

    /// The four steps of the progress bar: dispatched (or just ordered), out for
    /// delivery, nearby, delivered. `ordered`: nothing has left yet.
    pub(super) fn steps(&self, ordered: bool) -> [&'static str; 4] {
        let first = if ordered { Milestone::Created } else { Milestone::Dispatched };
        [
            self.milestone(first),
            self.milestone(Milestone::OutForDelivery),
            if self.de { "In der Nähe" } else { "Nearby" },
            self.milestone(Milestone::Delivered),
        ]
    }

    /// The confirmation after a customer's action (`done=` in the page's query).
    pub(super) fn done(&self, action: &str) -> Option<&'static str> {
        Some(match (action, self.de) {
            ("instructions", false) => "Thank you: your instructions for the driver are saved.",
            ("instructions", true) => "Danke: Ihre Hinweise für den Fahrer sind gespeichert.",
            ("not-home", false) => "Thank you: we have noted that you are not at home today.",
            ("not-home", true) => "Danke: Wir haben vermerkt, dass Sie heute nicht zu Hause sind.",
            _ => return None,
        })
    }

    /// The evidence of the handover around its local time: the words before the `<time>`
    /// element and after it. The distance is the device's signed distance from the address.
    pub(super) fn handover(&self, distance_m: Option<u64>) -> (String, String) {
        match (distance_m, self.de) {
            (Some(d), false) => (
                "The driver’s device signed the handover at ".to_owned(),
                format!(", with the van parked {d} m from the address."),
            ),
            (Some(d), true) => (
                "Das Gerät des Fahrers hat die Übergabe am ".to_owned(),
                format!(" signiert, der Lieferwagen stand {d} m von der Adresse entfernt."),
            ),
            (None, false) => ("The driver’s device signed the handover at ".to_owned(), ".".to_owned()),
            (None, true) => {
                ("Das Gerät des Fahrers hat die Übergabe am ".to_owned(), " signiert.".to_owned())
            }
        }
    }

    /// Whether the carrier's own tracking says delivered too.
    pub(super) fn carrier(&self, agrees: bool) -> &'static str {
        match (agrees, self.de) {
            (true, false) => "The carrier confirms the delivery too.",
            (true, true) => "Auch der Versender bestätigt die Zustellung.",
            (false, false) => "The carrier has not confirmed the delivery yet.",
            (false, true) => "Der Versender hat die Zustellung noch nicht bestätigt.",
        }
    }

    /// The van section's heading.
    pub(super) fn van_heading(&self) -> &'static str {
        if self.de { "Auf dem Weg zu Ihnen" } else { "On its way to you" }
    }

    /// The van's paragraph: how far, and how old that is. Distances are rounded (50 m,
    /// then a tenth of a kilometre): the customer learns how near, not where.
    pub(super) fn van(&self, van: VanWords) -> String {
        let lead = if self.de {
            "Der Lieferwagen fährt jetzt zu Ihrer Adresse"
        } else {
            "The van is heading to your address now"
        };
        let detail = match (van.distance_m, van.age_s) {
            (Some(d), Some(age)) => {
                let about = if self.de { "etwa" } else { "about" };
                let far = match d {
                    d if d < 100.0 => {
                        if self.de {
                            "weniger als 100 m".to_owned()
                        } else {
                            "less than 100 m".to_owned()
                        }
                    }
                    d if d < 1_000.0 => format!("{about} {} m", (d / 50.0).round() * 50.0),
                    d => {
                        let km = format!("{:.1}", d / 1000.0);
                        format!("{about} {} km", if self.de { km.replace('.', ",") } else { km })
                    }
                };
                let ago = if age < 120 { format!("{age} s") } else { format!("{} min", age / 60) };
                if self.de {
                    format!(": {far} entfernt (Position von vor {ago})")
                } else {
                    format!(": {far} away (position from {ago} ago)")
                }
            }
            _ => String::new(),
        };
        format!("{lead}{detail}.")
    }

    /// The arrival window, `from` and `to` in the customer's local "HH:MM". Apostrophes on
    /// the page are typographic (’): the template engine would write `'` as `&#x27;`.
    pub(super) fn window(&self, stops_before: usize, from: &str, to: &str) -> String {
        let stops = match (stops_before, self.de) {
            (0, false) => "yours is the van’s next stop".to_owned(),
            (0, true) => "Ihre Adresse ist der nächste Halt".to_owned(),
            (1, false) => "1 stop before yours".to_owned(),
            (1, true) => "noch 1 Halt vor Ihrem".to_owned(),
            (n, false) => format!("{n} stops before yours"),
            (n, true) => format!("noch {n} Halte vor Ihrem"),
        };
        if self.de {
            format!("Voraussichtlich zwischen {from} und {to} ({stops}).")
        } else {
            format!("Expected between {from} and {to} ({stops}).")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_customers_own_actions_show_in_their_history_in_their_language() {
        let (en, de) = (Words { de: false }, Words { de: true });
        assert_eq!(en.kind("customer", "customer_instructions"), Some("Your instructions for the driver"));
        assert_eq!(
            de.kind("customer", "customer_not_home"),
            Some("Sie haben gemeldet: heute nicht zu Hause")
        );
        // Only the customer's own entries read as "you": the same kind from another
        // source is not shown.
        assert_eq!(en.kind("ups", "customer_not_home"), None);
    }
}
