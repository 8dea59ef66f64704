//! MODE SENSE and MODE SELECT (SPC-4 6.11-6.14) over three fixed mode pages.
//!
//! Nothing is changeable: writes are durable when they complete, so the write cache is off
//! (WCE=0) and there is nothing for an initiator to tune. MODE SELECT therefore accepts
//! exactly the current values (initiators echo pages back) and rejects any change.

use crate::scsi::{
    cdb::{ModeFormat, PageControl},
    limits::Geometry,
    sense::{AdditionalSense, Sense, SenseKey},
};

/// Caching mode page code.
pub const PAGE_CACHING: u8 = 0x08;
/// Control mode page code.
pub const PAGE_CONTROL: u8 = 0x0A;
/// Informational exceptions control mode page code.
pub const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
/// The page code that asks for every page.
pub const PAGE_ALL: u8 = 0x3F;

/// The pages in the order MODE SENSE returns them for [`PAGE_ALL`].
const PAGES: [u8; 3] = [PAGE_CACHING, PAGE_CONTROL, PAGE_INFORMATIONAL_EXCEPTIONS];

/// The current (and default) values of a page, or `None` if we do not have it.
fn current_page(page_code: u8) -> Option<Vec<u8>> {
    let page = match page_code {
        // Caching (SBC-4 6.5.5): page length 12h; WCE 0 (writes are durable on completion),
        // RCD 0; no prefetch or cache segment parameters.
        PAGE_CACHING => {
            let mut page = vec![0u8; 0x14];
            page[0] = PAGE_CACHING;
            page[1] = 0x12;
            page
        }
        // Control (SPC-4 7.5.8): page length 0Ah; TST 000b, D_SENSE 0 (fixed-format sense),
        // GLTSD 1 (no log parameters to save); QUEUE ALGORITHM MODIFIER 1h (unrestricted
        // reordering), QERR 00b.
        PAGE_CONTROL => vec![PAGE_CONTROL, 0x0A, 0x02, 0x10, 0, 0, 0, 0, 0, 0, 0, 0],
        // Informational exceptions control (SPC-4 7.5.15): page length 0Ah; DEXCPT 1 (no
        // failure prediction), MRIE 0h.
        PAGE_INFORMATIONAL_EXCEPTIONS => {
            vec![
                PAGE_INFORMATIONAL_EXCEPTIONS,
                0x0A,
                0x08,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ]
        }
        _ => return None,
    };
    Some(page)
}

/// A page for `control`: the changeable mask is all zeros after the page header.
fn page(page_code: u8, control: PageControl) -> Option<Vec<u8>> {
    let mut page = current_page(page_code)?;
    if control == PageControl::Changeable {
        page[2..].fill(0);
    }
    Some(page)
}

/// What MODE SENSE asked for.
#[derive(Clone, Copy, Debug)]
pub struct ModeSenseRequest {
    /// The header layout.
    pub format: ModeFormat,
    /// Which values.
    pub page_control: PageControl,
    /// Which page.
    pub page_code: u8,
    /// Which subpage.
    pub subpage_code: u8,
    /// Whether to include a block descriptor.
    pub block_descriptor: bool,
    /// Whether a long LBA block descriptor is acceptable.
    pub long_lba_accepted: bool,
}

/// The MODE SENSE parameter data (header, block descriptor, pages), before truncation to the
/// allocation length.
pub fn mode_sense(request: &ModeSenseRequest, geometry: &Geometry) -> Result<Vec<u8>, Sense> {
    if request.page_control == PageControl::Saved {
        return Err(Sense::new(
            SenseKey::IllegalRequest,
            AdditionalSense::SavingParametersNotSupported,
        ));
    }
    let mut pages = Vec::new();
    match (request.page_code, request.subpage_code) {
        // Subpage FFh with page 3Fh is "all pages and subpages"; we have no subpages.
        (PAGE_ALL, 0x00 | 0xFF) => {
            for code in PAGES {
                pages.extend(page(code, request.page_control).expect("invariant: listed page"));
            }
        }
        (code, 0x00) => match page(code, request.page_control) {
            Some(page) => pages.extend(page),
            None => return Err(Sense::invalid_field_in_cdb(2, Some(5))),
        },
        _ => return Err(Sense::invalid_field_in_cdb(3, None)),
    }
    let long_lba = request.long_lba_accepted && request.format == ModeFormat::Ten;
    let descriptor = if request.block_descriptor {
        block_descriptor(geometry, long_lba)
    } else {
        Vec::new()
    };
    // DPOFUA: DPO and FUA are accepted (every write is durable anyway). WP 0.
    let device_specific = 0x10;
    let mut data = match request.format {
        ModeFormat::Six => {
            let length = 3 + descriptor.len() + pages.len();
            let length = u8::try_from(length).expect("invariant: our pages fit MODE SENSE (6)");
            vec![length, 0x00, device_specific, descriptor.len() as u8]
        }
        ModeFormat::Ten => {
            let length = u16::try_from(6 + descriptor.len() + pages.len())
                .expect("invariant: our pages are small");
            let mut header = length.to_be_bytes().to_vec();
            header.extend_from_slice(&[0x00, device_specific, u8::from(long_lba), 0x00]);
            header.extend_from_slice(&(descriptor.len() as u16).to_be_bytes());
            header
        }
    };
    data.extend_from_slice(&descriptor);
    data.extend_from_slice(&pages);
    Ok(data)
}

/// The direct-access block descriptor (SBC-4 6.5.2): short (8 bytes, block count saturated
/// at FFFFFFFFh) or long (16 bytes).
fn block_descriptor(geometry: &Geometry, long_lba: bool) -> Vec<u8> {
    let mut descriptor = Vec::with_capacity(16);
    if long_lba {
        descriptor.extend_from_slice(&geometry.block_count.to_be_bytes());
        descriptor.extend_from_slice(&[0; 4]);
        descriptor.extend_from_slice(&geometry.block_size.to_be_bytes());
    } else {
        let count = u32::try_from(geometry.block_count).unwrap_or(u32::MAX);
        descriptor.extend_from_slice(&count.to_be_bytes());
        descriptor.push(0);
        descriptor.extend_from_slice(&geometry.block_size.to_be_bytes()[1..]);
    }
    descriptor
}

/// Checks MODE SELECT parameter data: accepted if it changes nothing. Field pointers are
/// offsets in the parameter list.
pub fn mode_select(
    format: ModeFormat,
    page_format: bool,
    parameters: &[u8],
    geometry: &Geometry,
) -> Result<(), Sense> {
    if parameters.is_empty() {
        return Ok(());
    }
    // PF 0 means vendor-specific page formats; we only know the standard ones.
    if !page_format {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    let (header_len, descriptor_len, long_lba) = match format {
        ModeFormat::Six => {
            if parameters.len() < 4 {
                return Err(Sense::parameter_list_length_error());
            }
            (4, usize::from(parameters[3]), false)
        }
        ModeFormat::Ten => {
            if parameters.len() < 8 {
                return Err(Sense::parameter_list_length_error());
            }
            let length = u16::from_be_bytes([parameters[6], parameters[7]]);
            (8, usize::from(length), parameters[4] & 0x01 != 0)
        }
    };
    if parameters.len() < header_len + descriptor_len {
        return Err(Sense::parameter_list_length_error());
    }
    check_block_descriptor(
        &parameters[header_len..header_len + descriptor_len],
        header_len,
        long_lba,
        geometry,
    )?;
    check_pages(
        &parameters[header_len + descriptor_len..],
        header_len + descriptor_len,
    )
}

/// Accepts no descriptor or one matching the device: the same block length, and a block
/// count of zero ("unchanged") or the current one.
fn check_block_descriptor(
    descriptor: &[u8],
    offset: usize,
    long_lba: bool,
    geometry: &Geometry,
) -> Result<(), Sense> {
    if descriptor.is_empty() {
        return Ok(());
    }
    let expected = block_descriptor(geometry, long_lba);
    let length_field = if offset == 4 { 3 } else { 6 };
    if descriptor.len() != expected.len() {
        return Err(Sense::invalid_field_in_parameter_list(length_field, None));
    }
    let count_len = if long_lba { 8 } else { 4 };
    let count_zero = descriptor[..count_len].iter().all(|&byte| byte == 0);
    for (index, (&given, &wanted)) in descriptor.iter().zip(&expected).enumerate() {
        if index < count_len && count_zero {
            continue;
        }
        if given != wanted {
            return Err(Sense::invalid_field_in_parameter_list(
                (offset + index) as u16,
                None,
            ));
        }
    }
    Ok(())
}

/// Accepts pages equal to the current ones (the PS bit, reserved in MODE SELECT, ignored).
fn check_pages(pages: &[u8], offset: usize) -> Result<(), Sense> {
    let mut at = 0;
    while at < pages.len() {
        let field = |index: usize| (offset + index) as u16;
        if pages.len() - at < 2 {
            return Err(Sense::parameter_list_length_error());
        }
        // SPF: subpage format; we have no subpages.
        if pages[at] & 0x40 != 0 {
            return Err(Sense::invalid_field_in_parameter_list(field(at), Some(6)));
        }
        let Some(current) = current_page(pages[at] & 0x3F) else {
            return Err(Sense::invalid_field_in_parameter_list(field(at), Some(5)));
        };
        let length = 2 + usize::from(pages[at + 1]);
        if length != current.len() {
            return Err(Sense::invalid_field_in_parameter_list(field(at + 1), None));
        }
        if pages.len() - at < length {
            return Err(Sense::parameter_list_length_error());
        }
        let given = &pages[at..at + length];
        if let Some(index) = (2..length).find(|&index| given[index] != current[index]) {
            return Err(Sense::invalid_field_in_parameter_list(
                field(at + index),
                None,
            ));
        }
        at += length;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEOMETRY: Geometry = Geometry {
        block_size: 512,
        block_count: 0x1000,
    };

    fn request(format: ModeFormat, page_code: u8, block_descriptor: bool) -> ModeSenseRequest {
        ModeSenseRequest {
            format,
            page_control: PageControl::Current,
            page_code,
            subpage_code: 0,
            block_descriptor,
            long_lba_accepted: false,
        }
    }

    /// MODE SENSE (6) of the caching page with a block descriptor, hand-assembled.
    #[test]
    fn mode_sense_6_caching_layout() {
        let data = mode_sense(&request(ModeFormat::Six, PAGE_CACHING, true), &GEOMETRY)
            .expect("caching page");
        let mut expected = vec![3 + 8 + 20, 0x00, 0x10, 0x08];
        expected.extend_from_slice(&[0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x02, 0x00]);
        expected.extend_from_slice(&[0x08, 0x12]);
        expected.extend_from_slice(&[0; 18]);
        assert_eq!(data, expected);
    }

    #[test]
    fn mode_sense_all_pages_and_errors() {
        let data =
            mode_sense(&request(ModeFormat::Ten, PAGE_ALL, false), &GEOMETRY).expect("all pages");
        assert_eq!(data.len(), 8 + 20 + 12 + 12);
        assert_eq!(&data[..8], &[0x00, 50, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!((data[8], data[28], data[40]), (0x08, 0x0A, 0x1C));
        let unknown = mode_sense(&request(ModeFormat::Six, 0x19, false), &GEOMETRY);
        assert_eq!(unknown, Err(Sense::invalid_field_in_cdb(2, Some(5))));
        let mut saved = request(ModeFormat::Six, PAGE_ALL, false);
        saved.page_control = PageControl::Saved;
        let sense = mode_sense(&saved, &GEOMETRY).expect_err("saved values");
        assert_eq!(
            sense.additional,
            AdditionalSense::SavingParametersNotSupported
        );
        let mut changeable = request(ModeFormat::Six, PAGE_CONTROL, false);
        changeable.page_control = PageControl::Changeable;
        let data = mode_sense(&changeable, &GEOMETRY).expect("changeable mask");
        assert_eq!(&data[4..], &[0x0A, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    /// MODE SELECT of what MODE SENSE returned succeeds; turning WCE on fails and points
    /// at the byte.
    #[test]
    fn mode_select_echo_and_change() {
        let mut data = mode_sense(&request(ModeFormat::Six, PAGE_CACHING, true), &GEOMETRY)
            .expect("caching page");
        data[0] = 0; // MODE DATA LENGTH is reserved in MODE SELECT.
        assert_eq!(mode_select(ModeFormat::Six, true, &data, &GEOMETRY), Ok(()));
        data[4 + 8 + 2] |= 0x04;
        assert_eq!(
            mode_select(ModeFormat::Six, true, &data, &GEOMETRY),
            Err(Sense::invalid_field_in_parameter_list(14, None))
        );
        assert_eq!(
            mode_select(ModeFormat::Six, true, &data[..10], &GEOMETRY),
            Err(Sense::parameter_list_length_error())
        );
        assert_eq!(mode_select(ModeFormat::Ten, true, &[], &GEOMETRY), Ok(()));
    }
}
