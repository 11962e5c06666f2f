//! The tracking page's look per fleet (`[notify.brand]`): the name customers know, two
//! colours, a logo, and the map's tile server; and the check that keeps the page legible.
//!
//! The page's background is always white ([`PAGE_BACKGROUND`]). A colour the fleet
//! chooses is refused at start-up unless it has at least WCAG AA's contrast ratio for
//! text ([`MIN_CONTRAST`], 4.5:1) against that background: the primary colour is the
//! header's background under white text and the colour of links and buttons, the text
//! colour is the body text's.

use super::map::{TileSource, https_origin};

/// The page's background.
pub const PAGE_BACKGROUND: Rgb = Rgb(0xff, 0xff, 0xff);
/// Secondary text (times, hints).
pub const MUTED_TEXT: Rgb = Rgb(0x4b, 0x55, 0x63);
/// What went wrong (a delivery problem on the progress bar).
pub const PROBLEM_TEXT: Rgb = Rgb(0xb4, 0x23, 0x18);
/// What is confirmed (the carrier agrees).
pub const CONFIRMED_TEXT: Rgb = Rgb(0x15, 0x80, 0x3d);
/// WCAG 2 level AA's least contrast ratio for normal text.
pub const MIN_CONTRAST: f64 = 4.5;
/// The primary colour when the fleet sets none.
pub const DEFAULT_PRIMARY: Rgb = Rgb(0x1d, 0x4e, 0xd8);
/// The text colour when the fleet sets none.
pub const DEFAULT_TEXT: Rgb = Rgb(0x1f, 0x29, 0x37);
/// The name when the fleet sets none.
pub const DEFAULT_NAME: &str = "Doorstep";
/// Longest brand name shown, characters.
const MAX_NAME: usize = 60;

/// An sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// Reads `#rrggbb`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.trim().strip_prefix('#')?;
        if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
        Some(Self(byte(0)?, byte(2)?, byte(4)?))
    }

    /// `#rrggbb`, lower case: what the page's style sheet says.
    pub fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }

    /// WCAG 2's relative luminance: 0 for black, 1 for white.
    pub fn luminance(self) -> f64 {
        let linear = |c: u8| {
            let c = f64::from(c) / 255.0;
            if c <= 0.040_45 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
        };
        0.2126 * linear(self.0) + 0.7152 * linear(self.1) + 0.0722 * linear(self.2)
    }
}

/// WCAG 2's contrast ratio of two colours, 1 (none) to 21 (black on white).
pub fn contrast(a: Rgb, b: Rgb) -> f64 {
    let (la, lb) = (a.luminance(), b.luminance());
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

/// The fleet's look, checked ([`Brand::new`]).
#[derive(Debug, Clone)]
pub struct Brand {
    /// The name customers know the sender or fleet by.
    pub name: String,
    /// Header, links and buttons.
    pub primary: Rgb,
    /// Body text.
    pub text: Rgb,
    /// The logo: an https URL or a path on this hub.
    pub logo_url: Option<String>,
    /// The map's tile server; `None`: no map, the distance in words.
    pub map_tiles: Option<TileSource>,
    /// The page's Content-Security-Policy, allowing images from the logo's and the tile
    /// server's origins besides this hub.
    csp: String,
}

/// Why a brand was refused: the key, and what is wrong with it and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrandError {
    /// The key under `[notify.brand]`.
    pub field: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

fn refuse(field: &'static str, message: String) -> BrandError {
    BrandError { field, message }
}

impl Default for Brand {
    fn default() -> Self {
        Self::new(DEFAULT_NAME, DEFAULT_PRIMARY.hex().as_str(), DEFAULT_TEXT.hex().as_str(), None, None)
            .unwrap_or_else(|e| unreachable!("the default brand is valid: {e:?}"))
    }
}

impl Brand {
    /// Checks what `[notify.brand]` says: a name, `#rrggbb` colours legible on the page's
    /// white background, a logo at an https URL or a path on this hub, a tile template.
    pub fn new(
        name: &str,
        primary: &str,
        text: &str,
        logo_url: Option<&str>,
        map_tiles: Option<&str>,
    ) -> Result<Self, BrandError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(refuse("name", format!("must be 1 to {MAX_NAME} characters on one line")));
        }
        let primary = legible("primary_color", primary)?;
        let text = legible("text_color", text)?;
        let logo_url = logo_url.map(str::trim).filter(|l| !l.is_empty());
        let mut img_src = String::from("'self'");
        if let Some(logo) = logo_url {
            let safe = !logo.chars().any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '\\'));
            let on_this_hub = logo.starts_with('/') && !logo.starts_with("//");
            match (safe, on_this_hub, https_origin(logo)) {
                (true, true, _) => {}
                (true, false, Some(origin)) => {
                    img_src.push(' ');
                    img_src.push_str(&origin);
                }
                _ => {
                    return Err(refuse(
                        "logo_url",
                        format!(
                            "{logo:?} is neither an https:// URL nor a path on this hub; write \
                             \"https://cdn.example.com/logo.svg\" or \"/static/logo.svg\""
                        ),
                    ));
                }
            }
        }
        let map_tiles = match map_tiles.map(str::trim).filter(|m| !m.is_empty()) {
            None => None,
            Some(template) => Some(TileSource::parse(template).map_err(|m| refuse("map_tiles", m))?),
        };
        if let Some(tiles) = &map_tiles
            && !img_src.split(' ').any(|s| s == tiles.origin())
        {
            img_src.push(' ');
            img_src.push_str(tiles.origin());
        }
        // As strict as the page allows: one script, the page's own refresher, allowed by
        // its hash and fetching only this hub; no fonts or frames; forms post only to
        // this hub; nobody frames the page to trick a customer into a click.
        let csp = format!(
            "default-src 'none'; img-src {img_src}; style-src 'unsafe-inline'; script-src {}; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            super::view::live_script_source()
        );
        Ok(Self {
            name: name.to_owned(),
            primary,
            text,
            logo_url: logo_url.map(str::to_owned),
            map_tiles,
            csp,
        })
    }

    /// The tracking page's Content-Security-Policy.
    pub fn csp(&self) -> &str {
        &self.csp
    }
}

/// A `#rrggbb` colour with AA contrast on the page's background, or why not.
fn legible(field: &'static str, value: &str) -> Result<Rgb, BrandError> {
    let Some(colour) = Rgb::parse(value) else {
        return Err(refuse(field, format!("{value:?} is not a colour written #rrggbb (like \"#1d4ed8\")")));
    };
    let ratio = contrast(colour, PAGE_BACKGROUND);
    if ratio < MIN_CONTRAST {
        let default = if field == "text_color" { DEFAULT_TEXT } else { DEFAULT_PRIMARY };
        return Err(refuse(
            field,
            format!(
                "{} on the page's white background has a contrast ratio of {:.2}:1; customers \
                 need at least {MIN_CONTRAST}:1 (WCAG AA) to read it. Choose a darker shade of it \
                 (the default {} has {:.1}:1)",
                colour.hex(),
                (ratio * 100.0).floor() / 100.0,
                default.hex(),
                contrast(default, PAGE_BACKGROUND)
            ),
        ));
    }
    Ok(colour)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrast_is_wcags_ratio_of_relative_luminances() {
        assert!((contrast(Rgb(0, 0, 0), PAGE_BACKGROUND) - 21.0).abs() < 1e-9);
        assert!((contrast(PAGE_BACKGROUND, PAGE_BACKGROUND) - 1.0).abs() < 1e-9);
        // WCAG's own borderline greys: #767676 passes AA on white, #777777 does not.
        assert!(contrast(Rgb(0x76, 0x76, 0x76), PAGE_BACKGROUND) >= MIN_CONTRAST);
        assert!(contrast(Rgb(0x77, 0x77, 0x77), PAGE_BACKGROUND) < MIN_CONTRAST);
        assert_eq!(contrast(DEFAULT_PRIMARY, PAGE_BACKGROUND), contrast(PAGE_BACKGROUND, DEFAULT_PRIMARY));
    }

    #[test]
    fn every_default_colour_pair_on_the_page_meets_wcag_aa() {
        let pairs = [
            ("body text on the page", DEFAULT_TEXT, PAGE_BACKGROUND, 14.6),
            ("links and buttons on the page", DEFAULT_PRIMARY, PAGE_BACKGROUND, 6.6),
            ("white header text on the primary colour", PAGE_BACKGROUND, DEFAULT_PRIMARY, 6.6),
            ("times and hints", MUTED_TEXT, PAGE_BACKGROUND, 7.5),
            ("a delivery problem", PROBLEM_TEXT, PAGE_BACKGROUND, 6.5),
            ("the carrier agrees", CONFIRMED_TEXT, PAGE_BACKGROUND, 5.0),
        ];
        for (what, fg, bg, at_least) in pairs {
            let ratio = contrast(fg, bg);
            assert!(ratio >= MIN_CONTRAST && ratio >= at_least, "{what}: {ratio:.2}:1");
        }
    }

    #[test]
    fn a_brand_colour_too_light_for_the_page_is_refused_with_its_ratio() {
        let yellow = Brand::new("Acme", "#ffcc00", "#1f2937", None, None).expect_err("too light");
        assert_eq!(yellow.field, "primary_color");
        assert!(yellow.message.contains("1.51:1") && yellow.message.contains("4.5:1"), "{}", yellow.message);
        assert!(yellow.message.contains("darker"), "says what to do: {}", yellow.message);
        let grey = Brand::new("Acme", "#1d4ed8", "#777777", None, None).expect_err("too light");
        assert_eq!(grey.field, "text_color");
        assert!(grey.message.contains("4.47:1"), "{}", grey.message);
        let typo = Brand::new("Acme", "1d4ed8", "#1f2937", None, None).expect_err("no #");
        assert!(typo.message.contains("#rrggbb"), "{}", typo.message);
        assert!(Brand::new("Acme", "#0B3D91", "#000000", None, None).is_ok(), "upper case hex is fine");
        assert!(Brand::new("", "#0b3d91", "#000000", None, None).is_err(), "a name is needed");
    }

    #[test]
    fn the_csp_allows_images_from_the_logo_and_the_tiles_and_nothing_else_new() {
        let plain = Brand::default();
        assert_eq!(
            plain.csp(),
            format!(
                "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src {}; \
                 connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
                super::super::view::live_script_source()
            )
        );
        let branded = Brand::new(
            "Acme",
            "#0b3d91",
            "#111111",
            Some("https://cdn.acme.example/logo.svg"),
            Some("https://tile.example.org/{z}/{x}/{y}.png"),
        )
        .expect("valid");
        assert!(
            branded.csp().contains("img-src 'self' https://cdn.acme.example https://tile.example.org;"),
            "{}",
            branded.csp()
        );
        // Branding adds image origins only: every other directive is the plain page's.
        let others = |csp: &str| -> Vec<String> {
            csp.split("; ").filter(|d| !d.starts_with("img-src")).map(str::to_owned).collect()
        };
        assert_eq!(others(branded.csp()), others(plain.csp()));
        let local = Brand::new("Acme", "#0b3d91", "#111111", Some("/static/logo.png"), None).expect("a path");
        assert!(local.csp().contains("img-src 'self';"), "{}", local.csp());
        for bad in ["http://cdn.example/logo.png", "//cdn.example/logo.png", "logo.png", "/a\"onerror=x"] {
            let e = Brand::new("Acme", "#0b3d91", "#111111", Some(bad), None).expect_err(bad);
            assert_eq!(e.field, "logo_url", "{bad}");
        }
    }
}
